"""The twin's gRPC server: servicers, the prediction runtime, the interceptor (token, drain gate, metrics)."""
