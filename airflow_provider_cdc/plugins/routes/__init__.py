"""The routers of the CDC REST API, one per area of the original spec."""
