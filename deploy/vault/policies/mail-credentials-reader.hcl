# The mail-sending side: read a tenant's record and unwrap its data key with that
# tenant's own Transit key (`mail-credentials-{tenant}`); the reader checks that the
# envelope names the key of the tenant whose record it is. No key management, no export.
path "smtp/data/+/admin" {
  capabilities = ["read"]
}

path "transit/decrypt/mail-credentials-*" {
  capabilities = ["update"]
}

# Keep its own token alive without the default policy: look it up and renew it.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
