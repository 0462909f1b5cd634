# The provisioning worker: write each tenant's admin record and get fresh wrapped
# data keys. It reads a record back to make a retried write a no-op, and to rotate
# (keep the other fields, restore the previous version if MailU refuses the new
# password); what it reads is an envelope it cannot open: it has no Transit decrypt.
path "smtp/data/+/admin" {
  capabilities = ["create", "update", "read"]
}

# Compensation withdraws (soft-deletes) the version a failed run wrote; an
# operator can undelete it.
path "smtp/delete/+/admin" {
  capabilities = ["update"]
}

# Deprovisioning a cancelled tenant (workflows/deprovision.py) destroys its record for
# good: every version and the metadata. Only this path pattern; still no list.
path "smtp/metadata/+/admin" {
  capabilities = ["delete"]
}

# Each tenant's own Transit key, `mail-credentials-{tenant}` (activities/vault.py): the
# tenant's first data key creates it (Transit create is `update` on keys/<name>: OpenBao
# has no existence check there), deprovisioning deletes it (config deletion_allowed, then
# delete): crypto-shredding. The glob also reaches the key's rotate/trim/config/
# soft-delete endpoints (a policy cannot carve them out: a `+` deny ranks below this
# glob); with them the worker can only make a tenant's key unusable, which it can do
# anyway by destroying the record. No decrypt, no export or backup (other paths), so
# the worker still never opens an envelope.
path "transit/keys/mail-credentials-*" {
  capabilities = ["update", "delete"]
}

path "transit/datakey/plaintext/mail-credentials-*" {
  capabilities = ["update"]
}

# The audit chain (activities/audit.py): MAC each new row with a key it cannot export,
# check the rows since the anchored head, and move the head with check-and-set. It
# cannot write the auditor's checkpoint (audit-chain/checkpoint/...), so history up to the
# last checkpoint stays fixed even against this token.
path "transit/hmac/mail-audit" {
  capabilities = ["update"]
}

path "transit/verify/mail-audit" {
  capabilities = ["update"]
}

path "audit-chain/data/head/+" {
  capabilities = ["create", "update", "read"]
}

# Keep its own token alive without the default policy: look it up and renew it.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
