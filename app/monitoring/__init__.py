"""Operations: Prometheus metrics at /metrics and request logging."""
