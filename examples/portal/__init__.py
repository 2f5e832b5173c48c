"""A small patient portal (role Clientportaal) that shows patients their notifications.

DEMO ONLY: it has no patient login, so anyone who can reach it reads any inbox by BSN;
it listens on loopback for that reason. What it does show is how an application lives
with the hub:

- on start it gets an access token (SMART backend services, a client assertion signed
  with its private key) and subscribes to `Communication?category=melding`, with a
  fresh shared secret in `channel.header`;
- it serves HTTPS; a notification is answered 204 at once and handled afterwards: the
  portal searches what is new, its requests carrying X-Correlation-Id = the
  notification's X-Request-Id and the same X-Trace-Id, so the audit trail links them;
- `/patients/<bsn>` is the patient's inbox (found with the hub's `patient-identifier`
  search parameter), plain escaped HTML, with attachments to download;
- the inbox offers push notifications on the patient's device (Web Push): the portal
  keeps the browser's subscription and, for each new melding, pushes "you have a new
  message" with the inbox's link, like the hub's e-mail (push.py, push_store.py, and
  static/push.js and static/sw.js for the page).

Run it with `python -m examples.portal --help`; `make demo` runs it with a hub.
"""
