"""The test fixture's mongod: a writable primary of a replica set, with change streams and transactions."""

from __future__ import annotations

from urllib.parse import urlsplit


def test_replica_set_with_change_streams_and_transactions(mongo_server, mongo_database):
    database = urlsplit(mongo_database).path.lstrip("/")
    with mongo_server.client() as client:
        assert client.admin.command("hello")["setName"] == "rs0"
        coll = client[database]["probe"]
        with coll.watch() as stream:
            with client.start_session() as session, session.start_transaction():
                coll.insert_one({"_id": 1}, session=session)
                coll.insert_one({"_id": 2}, session=session)
            events = [stream.next(), stream.next()]
    assert [e["documentKey"]["_id"] for e in events] == [1, 2]
    assert events[0]["lsid"] == events[1]["lsid"] and events[0]["txnNumber"] == events[1]["txnNumber"]
    assert mongo_server.version.startswith("6.0")
