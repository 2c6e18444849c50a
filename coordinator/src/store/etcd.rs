//! etcd store: see below.
