"""API keys: who a request comes from, and which experiments it may see."""
