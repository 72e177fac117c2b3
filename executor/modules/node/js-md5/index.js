// dscbatch's stand-in for the npm module js-md5 (HumanEval-X's JavaScript/162 requires it): md5(message) is the
// hex digest of the message's UTF-8 bytes, as js-md5's is; md5.hex is the same function. Node's crypto does the work.
'use strict';
const crypto = require('crypto');

function md5(message) {
  return crypto.createHash('md5').update(message).digest('hex');
}

md5.hex = md5;
module.exports = md5;
