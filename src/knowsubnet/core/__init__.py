"""What every stage shares: the typed params, bad-input errors, atomic file output, content
digests, provenance stamps and progress reporting. Nothing here knows about models or facts."""
