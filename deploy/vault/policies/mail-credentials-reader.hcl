# The mail-sending side: read a tenant's record and unwrap its data key.
path "smtp/data/+/admin" {
  capabilities = ["read"]
}

path "transit/decrypt/mail-credentials" {
  capabilities = ["update"]
}
