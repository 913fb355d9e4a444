"""What every stage shares: the typed params, bad-input errors, atomic file output, content
digests, provenance stamps, progress reporting and the bootstrap intervals. Nothing here knows
about models or facts."""
