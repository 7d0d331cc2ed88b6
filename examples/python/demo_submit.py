"""Submits the Python part of the demo into one spool (scripts/demo runs it).

Two initiator paths: the qmail API, and a standard-library ``EmailMessage`` with a binary
attachment and non-ASCII names spooled through ``qmail.submit_message``. Prints one line per
message: ``INITIATOR<TAB>QUEUE_ID<TAB>RECIPIENTS``.

Usage: python demo_submit.py SPOOL
"""

import sys
from email.message import EmailMessage
from email.headerregistry import Address

import qmail


def main(spool: str) -> None:
    qmail.set_default_spool(spool)

    msg = qmail.Message(
        from_=("Boutique Élodie", "shop@example.com"),
        to=[("Şmith, John", "john@example.org")],
        cc=["accounts@example.org"],
        bcc=["audit@example.com"],
        subject="Votre commande n° 42 est expédiée",
        text="Bonjour,\n\nvotre commande est partie aujourd'hui.\n",
        html="<p>Bonjour,</p><p>votre commande est <b>partie</b> aujourd'hui.</p>",
        headers={"X-Order": "42"},
        priority="high",
    )
    msg.attach(b"order,qty\n42,1\n", filename="commande-42.csv", content_type="text/csv")
    recipients = "john@example.org,accounts@example.org,audit@example.com"
    print(f"python (qmail API)\t{msg.submit()}\t{recipients}", flush=True)

    em = EmailMessage()
    em["From"] = Address("Jürgen Groß", "juergen", "example.com")
    em["To"] = Address("Zoë Ångström", "zoe", "example.org")
    em["Subject"] = "Rechnung für März"
    em.set_content("Guten Tag,\n\nanbei die Rechnung.\n")
    em.add_attachment(bytes(range(256)) * 64, maintype="application", subtype="octet-stream",
                      filename="rechnung-märz.bin")
    print(f"python (stdlib EmailMessage)\t{qmail.submit_message(em)}\tzoe@example.org", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
