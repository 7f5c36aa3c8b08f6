-- The sink database of the demo's pipelines, beside the shop (POSTGRES_DB) on the same server.
CREATE DATABASE warehouse;
