"""A standard Flight SQL client (ADBC + pyarrow) against a running Baton scheduler.

Usage: python adbc_flight_sql.py HOST:PORT
Lists tables, reads a table schema, runs queries and checks their answers; exits
non-zero with the cause on the first failure.
"""

import sys

import adbc_driver_flightsql.dbapi as flightsql


def main(address: str) -> None:
    with flightsql.connect(f"grpc://{address}") as conn:
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

            try:
                cur.execute("select * from nowhere")
                cur.fetchall()
            except Exception as error:  # the driver raises its own error types
                assert "nowhere" in str(error), error
            else:
                raise AssertionError("a query of an unknown table succeeded")
    print(f"ADBC Flight SQL: {len(tables)} tables listed, queries answered correctly")


if __name__ == "__main__":
    main(sys.argv[1])
