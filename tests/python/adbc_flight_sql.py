"""A standard Flight SQL client (ADBC + pyarrow) against a running Baton scheduler that
serves TLS and asks for a login.

Usage: BATON_USER=… BATON_PASSWORD=… python adbc_flight_sql.py HOST:PORT CA.pem
Logs in over grpc+tls (trusting CA.pem), lists tables, reads a table schema, runs
queries (and prepared statements with bound parameters) and checks their answers;
checks that no login and a wrong password are refused. Exits non-zero with the cause on the first failure.
"""

import os
import sys

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions


def connect(address: str, ca: str, user: str | None, password: str | None):
    options = {DatabaseOptions.TLS_ROOT_CERTS.value: ca}
    if user is not None:
        options["username"] = user
        options["password"] = password
    return flightsql.connect(f"grpc+tls://{address}", db_kwargs=options)


def refused(address: str, ca: str, user: str | None, password: str | None) -> None:
    """A connection with these credentials must not run a query."""
    try:
        with connect(address, ca, user, password) as conn, conn.cursor() as cur:
            cur.execute("select 1")
            cur.fetchall()
    except Exception as error:  # the driver raises its own error types
        text = str(error).lower()
        assert "unauthenticated" in text or "credentials" in text, error
    else:
        raise AssertionError(f"a query ran with user={user!r}")


def main(address: str, ca_path: str) -> None:
    with open(ca_path) as f:
        ca = f.read()
    user, password = os.environ["BATON_USER"], os.environ["BATON_PASSWORD"]
    refused(address, ca, None, None)
    refused(address, ca, user, password + "-wrong")

    with connect(address, ca, user, password) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = sorted(
            table["table_name"]
            for catalog in objects
            for schema in catalog["catalog_db_schemas"] or []
            for table in schema["db_schema_tables"] or []
        )
        for expected in ["customer", "lineitem", "nation", "orders", "region"]:
            assert expected in tables, f"{expected} not in {tables}"

        schema = conn.adbc_get_table_schema("nation")
        assert "n_name" in schema.names, schema

        with conn.cursor() as cur:
            cur.execute("select count(*) as n from nation")
            assert cur.fetchone()[0] == 25

            cur.execute(
                "select r_name, count(*) as nations from nation "
                "join region on n_regionkey = r_regionkey group by r_name order by r_name"
            )
            table = cur.fetch_arrow_table()
            assert table.num_rows == 5, table
            assert table.column("nations").to_pylist() == [5, 5, 5, 5, 5], table

            # A prepared statement with bound parameters answers as its literal query.
            for region in (1, 2):
                cur.execute(
                    "select count(*) as n from nation where n_regionkey = $1 and n_nationkey > $2",
                    parameters=(region, 10),
                )
                bound = cur.fetchone()[0]
                cur.execute(
                    "select count(*) as n from nation "
                    f"where n_regionkey = {region} and n_nationkey > 10"
                )
                assert bound == cur.fetchone()[0], (region, bound)

            try:
                cur.execute("select * from nowhere")
                cur.fetchall()
            except Exception as error:  # the driver raises its own error types
                assert "nowhere" in str(error), error
            else:
                raise AssertionError("a query of an unknown table succeeded")
    print(
        f"ADBC Flight SQL over TLS as {user}: {len(tables)} tables listed, queries and "
        "prepared statements answered correctly, missing and wrong logins refused"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
