"""tersegate's proxy: the server, forwarding, the policy engine and the audit."""
