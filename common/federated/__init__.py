"""What the ServerApp and the ClientApp agree on, free of Flower: message types, record keys,
error codes, and the allow-list every reply must match (`protocol`)."""
