import assert from 'node:assert/strict';
import { encodeSipUser, MAX_SIP_USER_LENGTH, sipUserProblem } from '../../sip/sip-user.js';

describe('users from outside in SIP URIs', () => {
  it('refuses control characters and overlong users, and nothing else', () => {
    assert.equal(sipUserProblem('0301234\r\nX-Injected: yes'), 'contains control characters');
    assert.equal(sipUserProblem('a\u0000b'), 'contains control characters');
    assert.equal(sipUserProblem('a\u007fb'), 'contains control characters');
    assert.equal(sipUserProblem('1'.repeat(MAX_SIP_USER_LENGTH + 1)), `longer than ${MAX_SIP_USER_LENGTH} characters`);
    for (const ok of ['1'.repeat(MAX_SIP_USER_LENGTH), '+4930123456', '*67#123', 'alice.smith', 'Jörg', '']) {
      assert.equal(sipUserProblem(ok), undefined, ok);
    }
  });

  it('escapes what RFC 3261 does not allow unescaped in a URI user, UTF-8 by byte', () => {
    assert.equal(encodeSipUser('+49-30(123)456'), '+49-30(123)456');
    assert.equal(encodeSipUser("a&b=c+d$e,f;g?h/i!j~k*l'm_n.o"), "a&b=c+d$e,f;g?h/i!j~k*l'm_n.o");
    assert.equal(encodeSipUser('*67#123'), '*67%23123');
    assert.equal(encodeSipUser('a b@c:d<e>"%'), 'a%20b%40c%3Ad%3Ce%3E%22%25');
    assert.equal(encodeSipUser('Jörg'), 'J%C3%B6rg');
  });
});
