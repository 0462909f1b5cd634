# The auditor (`starter.py audit-verify`): check every row's MAC (it cannot make one),
# read the worker's anchored head, and record a checkpoint after a full verification,
# which the worker cannot move.
path "transit/verify/mail-audit" {
  capabilities = ["update"]
}

path "audit-chain/data/head/+" {
  capabilities = ["read"]
}

path "audit-chain/data/checkpoint/+" {
  capabilities = ["create", "update", "read"]
}

# Keep its own token alive without the default policy: look it up and renew it.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
