// Initiate the one-node replica set rs0 (change streams need a replica set), once: a second run finds it
// initiated and leaves it. Then wait until this node is primary, so that what depends on it finds it writable.
try {
  rs.status();
  print("replica set rs0 already initiated");
} catch (e) {
  if (e.codeName !== "NotYetInitialized") {
    throw e;
  }
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongodb:27017" }] });
  print("replica set rs0 initiated");
}
while (!db.hello().isWritablePrimary) {
  sleep(200);
}
print("mongodb:27017 is primary");
