"""WeiServing registry: the ZooKeeper data model, publisher, watcher and service config."""
