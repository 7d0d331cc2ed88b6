"""Submits from Python as a web application does (tests/deploy, 80-deploy.sh): one built
message and one composed with the email package. Usage: submit.py SPOOL RCPT; prints ids."""

import sys
from email.message import EmailMessage

import qmail

spool, rcpt = sys.argv[1], sys.argv[2]
qmail.set_default_spool(spool)
print(qmail.Message(from_="Shop <noreply@example.com>", to=rcpt, subject="from Python",
                    text="built in Python").submit())
m = EmailMessage()
m["From"] = "Shop <noreply@example.com>"
m["To"] = rcpt
m["Subject"] = "raw from Python"
m.set_content("composed by the email package")
print(qmail.submit_message(m))
