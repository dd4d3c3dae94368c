"""The audit trail: one tamper-evident record per response, saying where, when, by which model and
policy it was produced, with keyed digests in place of content.

A log is a JSON Lines file, one entry a line, each line the canonical JSON (sorted keys, no
spaces, UTF-8) of the entry (wrapped here):

    {"api":"kserve-v2","cache":null,"cache_of":null,"data_class":"personal",
     "entities":{"EMAIL":1},"hash":"<sha256 hex>","id":"01JH8ZK4X6Q2T7N3B5V9C0RDEF",
     "inputs":{"$.inputs[0].data":"<hmac hex>"},"kind":"response","model":"color_classifier",
     "model_sha256":"<sha256 hex>","model_version":"2","output":"<hmac hex>",
     "policy_revision":"2025-01-07.1","prev":"<sha256 hex of the line before, null first>",
     "reasons":["local:model-present"],"redactions":{},"request_id":"…","seq":41,
     "served_by":"color_classifier/2","served_tier":"edge","site":"ship-7","status":200,
     "tier":"edge","time":"2025-01-07T10:31:02.118Z"}

`hash` is the SHA-256 of the canonical JSON of the entry without `hash`; as that includes `prev`
(the previous entry's hash) and `seq` (0, 1, 2, ...), the entries form a hash chain: changing,
removing, inserting or moving any line breaks a link the verifier names. `<log>.head` holds the
newest synced entry's seq, hash and id, so entries cut from the end are missed too. Besides
`response` entries, a `segment` entry records a restart that found a torn tail (see log.py).

Digests of inputs and outputs are HMAC-SHA256 under a key derived from the site secret (see
record.Digester): without the secret, a log cannot be searched for a guessed value.

What the chain does not do: it has no key, so whoever can write the files can append
well-formed entries at the end, or rewrite a log and its head wholesale. Copies of records held
elsewhere (the store-and-forward spool sends them to the central tier) are the outside witness
that catches those; the chain makes every other change evident to anyone, without a secret.
"""

from router.audit.chain import AuditLogError, AuditLogHeld, Head
from router.audit.log import AuditLog, FsyncPolicy, log_file
from router.audit.record import AuditRecord, Digester, id_time, new_audit_id
from router.audit.verify import Located, Problem, Provenance, VerifyResult, show, verify

__all__ = [
    "AuditLog",
    "AuditLogError",
    "AuditLogHeld",
    "AuditRecord",
    "Digester",
    "FsyncPolicy",
    "Head",
    "Located",
    "Problem",
    "Provenance",
    "VerifyResult",
    "id_time",
    "log_file",
    "new_audit_id",
    "show",
    "verify",
]
