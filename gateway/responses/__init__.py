"""The Responses API's state and rules, kept by the gateway rather than one engine:
stored responses (:mod:`.store`), and how a request continues one (:mod:`.conversation`)."""
