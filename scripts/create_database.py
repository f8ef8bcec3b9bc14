"""Creates the database named by DATABASE_URL when it does not exist yet (utf8mb4).

Works for mysql:// and tidb:// alike: TiDB speaks MySQL's protocol.
"""

import time

import environ
import MySQLdb


def main() -> None:
    config = environ.Env.db_url_config(
        environ.Env()("DATABASE_URL", default="mysql://root@127.0.0.1:3306/usersvc")
    )
    connect_kwargs = {
        "host": config.get("HOST") or "127.0.0.1",
        "port": int(config.get("PORT") or 3306),
        "user": config.get("USER") or "root",
        "password": config.get("PASSWORD") or "",
    }
    for attempt in range(60):
        try:
            connection = MySQLdb.connect(**connect_kwargs)
            break
        except MySQLdb.OperationalError:
            if attempt == 59:
                raise
            time.sleep(0.5)
    name = config["NAME"].replace("`", "``")
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE DATABASE IF NOT EXISTS `{name}`"
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
    connection.close()


if __name__ == "__main__":
    main()
