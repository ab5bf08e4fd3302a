"""HTTP and WebSocket handlers: auth, parse, validate, one manager call, JSON out."""
