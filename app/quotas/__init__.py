"""Per-owner quotas on submissions: active arms and submissions per minute."""
