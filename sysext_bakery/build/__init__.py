"""The build pipeline per image: fetch, stage, validate, pack, read back, SHA256SUMS."""
