# The provisioning worker: write each tenant's admin record and get fresh wrapped
# data keys. It can read a record back (to make a retried write a no-op), but what
# it reads is an envelope it cannot open: it has no Transit decrypt.
path "smtp/data/+/admin" {
  capabilities = ["create", "update", "read"]
}

path "transit/datakey/plaintext/mail-credentials" {
  capabilities = ["update"]
}
