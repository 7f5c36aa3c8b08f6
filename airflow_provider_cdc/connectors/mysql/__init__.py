"""MySQL and MariaDB: a row-binlog source (pymysqlreplication) and a transactional sink (see :mod:`.factory`)."""
