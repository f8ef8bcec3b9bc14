# The web service's own MySQL account: it reads and writes rows, and can change
# no table. The mysql image's entrypoint runs this on its first start (an empty
# data folder), after it has made MYSQL_DATABASE and MYSQL_USER, the account the
# migrations run as, with all privileges on that database. Keep it without the
# execute bit: the entrypoint then sources it, which gives it docker_process_sql
# (the client, logged in as root over the socket).
docker_process_sql --database=mysql <<-EOSQL
	CREATE USER '${MYSQL_WEB_USER}'@'%' IDENTIFIED BY '${MYSQL_WEB_PASSWORD}';
	GRANT SELECT, INSERT, UPDATE, DELETE ON \`${MYSQL_DATABASE}\`.* TO '${MYSQL_WEB_USER}'@'%';
EOSQL
