-- The CDC user reads the binlog (REPLICATION SLAVE, REPLICATION CLIENT) besides the shop database that the image's
-- MYSQL_USER / MYSQL_DATABASE gave it.
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc'@'%';
FLUSH PRIVILEGES;
