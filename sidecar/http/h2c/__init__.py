"""HTTP/2 with prior knowledge (h2c) on both listeners and to origins that speak it.

frames         frames as bytes: the 9-byte head, the frames the sidecar writes, ConnectionFault
connection     one HTTP/2 connection, frame by frame: stream states, windows, settings, writes
header_checks  what makes a received header list malformed (a stream error)
header_blocks  HPACK as the sidecar speaks it: no dynamic table, fields and blocks coded once
stream         one stream, as either end sees it: what the peer sent on it, as it arrives
server         client connections: streams handed to the policy, the two-step GOAWAY drain,
               the limits on streams, resets and empty frames
client         connections to h2c origins (apps, provider sidecars), a few per origin
exchange       a stream as the policy sees it (the same interface as an HTTP/1.1 request)
translate      HTTP/1.1 <-> HTTP/2, for an origin that speaks the other one
"""
