"""Local stand-ins of the outside world that cannot run here: a Hetzner Cloud API
subset, one process per "server" (SSH + SFTP + MailU-like admin CLI + SMTP), and a
notification sink.

They exist for the demo and the tests only. Production code never imports this
package; it talks to these stand-ins over the same wire protocols it uses against the
real services, which is what keeps the stand-ins honest.
"""
