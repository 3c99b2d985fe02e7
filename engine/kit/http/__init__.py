"""The HTTP kit: what every connector that speaks HTTP composes (http, magento, salesforce, tryton).

A shared library, not a connector: it registers no ConnectorKind and imports no connector. Its modules,
each owning one thing::

    options.py     WireOptions (proxy, tls, max_response_size, max_decoded_size): the fields a connector's
                   options model mixes in; imported when a spec is validated, so it imports nothing heavy
    pagination.py  the Pagination model and the page walkers (page, offset, next-link, cursor, odata,
                   magento); Magento's searchCriteria, built in one place
    session.py     Session: one system's requests on one path (url, auth, log, wire, 401 once, answer),
                   and how a failure below HTTP becomes a TransientError or TerminalError
    auth.py        auth strategies and the token cache: bearer, basic, API key, OAuth 2.0 client
                   credentials (refreshed once on a 401), OAuth 1.0a (signed by oauthlib)
    errors.py      what a status means (408, 425, 429, 5xx transient; other 4xx terminal), Retry-After,
                   and the server's own message from the common error bodies
    urls.py        URLs as strings: a path under the system's url, a query, {name} placeholders
    wire.py        the HTTP/1.1 pool under it all: keep-alive, proxy tunnels, TLS, caps on an answer
    proxy.py       which proxy a request takes: the proxy option, HTTP(S)_PROXY and NO_PROXY
    tls.py         a system's TLS context: a CA bundle, a client certificate (mTLS)

Import from the module that owns a name (``from engine.kit.http.session import Session``); this
package imports none of them, so a spec's validation never loads the wire.
"""
