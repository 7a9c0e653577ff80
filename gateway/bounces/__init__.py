"""What comes back after a message left: bounces (RFC 3464 and the common plain-text
forms), complaints (RFC 5965) and auto-replies (RFC 3834), read and classified.

Pure functions over bytes: no storage, no network. The parts that fetch reports (IMAP
sync, the bounce listener) and match them to messages are built on this API:

    from gateway.bounces import report, rules, verp

    parsed = report.parse(raw, ref_headers=("X-Postern-Ref",))
    token = verp.token_for(parsed, envelope_recipient, verp.Verp(prefix="bounces", domain=...))
    loaded = rules.load(user_rules_file)       # ConfigError on a bad file
    for entry, verdict in loaded.classify_report(parsed): ...

The package itself imports nothing: importing one part (the class names for `postern
bounces`, say) costs that part, not the e-mail parser behind `report` (~45 ms).
"""
