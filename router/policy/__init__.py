"""The routing policy engine: pure functions from request facts and a health snapshot to a
decision. No I/O happens here, so every rule is tested as a plain function call."""
