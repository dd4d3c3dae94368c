"""Everything about talking to upstream clusters: the transport boundary, health, ejection,
breakers, retries and capability discovery."""
