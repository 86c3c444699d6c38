"""Credit authority: owns prepaid LLM credits and serves CreditAuthority/CreditAdmin over gRPC."""
