# The mail-sending side: read a tenant's record and unwrap its data key.
path "smtp/data/+/admin" {
  capabilities = ["read"]
}

path "transit/decrypt/mail-credentials" {
  capabilities = ["update"]
}

# Keep its own token alive without the default policy: look it up and renew it.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
