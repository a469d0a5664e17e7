"""HTTP routers, one module per domain; thin: parse, call the service, record the audit event, return."""
