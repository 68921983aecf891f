"""roamlink: a reliable UDP transport whose connections survive address changes."""
