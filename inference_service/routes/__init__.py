"""The REST routes: llm (the billed OpenAI-compatible endpoints) and credits (balance, usage)."""
