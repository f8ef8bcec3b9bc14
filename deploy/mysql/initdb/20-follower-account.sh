# The binary log follower's own MySQL account (docs/binlog-follower.md): it reads
# the binary log as a replica does (REPLICATION SLAVE), asks where it ends
# (REPLICATION CLIENT), reads the token table to find a changed user's tokens, and
# writes only its position. The position's table is made later, by the
# migrations: a grant on a table that does not exist yet needs CREATE with it,
# which lets this account create that one table and no other. Sourced by the
# mysql image's entrypoint on its first start, like 10-web-account.sh.
docker_process_sql --database=mysql <<-EOSQL
	CREATE USER '${MYSQL_FOLLOWER_USER}'@'%' IDENTIFIED BY '${MYSQL_FOLLOWER_PASSWORD}';
	GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '${MYSQL_FOLLOWER_USER}'@'%';
	GRANT SELECT ON \`${MYSQL_DATABASE}\`.* TO '${MYSQL_FOLLOWER_USER}'@'%';
	GRANT INSERT, UPDATE, CREATE ON \`${MYSQL_DATABASE}\`.\`users_binlog_position\` TO '${MYSQL_FOLLOWER_USER}'@'%';
EOSQL
