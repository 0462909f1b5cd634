# OpenBao server for the one-host stack: integrated (raft) storage on a volume, so a
# restart keeps every record. Initialise and unseal once (deploy/README.md).
# OpenBao 2.7.2 has no "file" backend ("unknown storage type file"); raft is its
# integrated storage (OpenBao docs: Configuration, storage backend "raft").
storage "raft" {
  path    = "/openbao/data"
  node_id = "openbao-1"
}

# Only reachable on the Compose network; put TLS in front before exposing it.
listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_disable     = true
}

api_addr      = "http://openbao:8200"
cluster_addr  = "http://openbao:8201"
disable_mlock = true
ui            = false
