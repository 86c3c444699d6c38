"""Generated from protos/credit/v1 by `make proto` (credit_service/protogen.py); do not edit."""
