# OpenBao server for the one-host stack: persistent file storage on a volume, so a
# restart keeps every record. Initialise and unseal once (deploy/README.md).
storage "file" {
  path = "/openbao/file"
}

# Only reachable on the Compose network; put TLS in front before exposing it.
listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}

api_addr      = "http://openbao:8200"
disable_mlock = true
ui            = false
