// Interop check: Taquito's RemoteSigner against a signer-gateway (run by tests/taquito.rs).
//
// usage: node sign.mjs <gateway base url> <pkh> <hex bytes>
//
// Prints one JSON line on stdout and exits 0 on success; on any failure prints a JSON line
// with {"ok":false,...} and exits 1 (2 for a usage error).
//
// RemoteSigner.sign() already fetches the public key, checks that it hashes to <pkh> and
// verifies the returned signature (blake2b-256 of the bytes, @taquito/utils verifySignature);
// we verify once more explicitly so this check does not depend on that library detail.
import { RemoteSigner } from '@taquito/remote-signer';
import { verifySignature, getPkhfromPk } from '@taquito/utils';

function fail(stage, err) {
  const out = {
    ok: false,
    stage,
    error: err && err.name ? err.name : String(err),
    message: err && err.message ? err.message : String(err),
  };
  // HttpResponseError carries the gateway's answer: show it.
  if (err && err.status !== undefined) out.status = err.status;
  if (err && err.body !== undefined) out.body = err.body;
  if (err && err.cause && err.cause.status !== undefined) {
    out.status = err.cause.status;
    out.body = err.cause.body;
  }
  console.log(JSON.stringify(out));
  process.exit(1);
}

const [baseUrl, pkh, hex] = process.argv.slice(2);
if (!baseUrl || !pkh || !hex || !/^([0-9a-fA-F]{2})+$/.test(hex)) {
  console.error('usage: node sign.mjs <gateway base url> <pkh> <hex bytes>');
  process.exit(2);
}

let signer;
try {
  signer = new RemoteSigner(pkh, baseUrl);
} catch (e) {
  fail('construct', e);
}

let publicKey, publicKeyHash, signed;
try {
  publicKey = await signer.publicKey();
} catch (e) {
  fail('publicKey', e);
}
try {
  publicKeyHash = await signer.publicKeyHash();
  const derived = getPkhfromPk(publicKey);
  if (derived !== pkh || publicKeyHash !== pkh) {
    throw new Error(`public key ${publicKey} hashes to ${derived}, expected ${pkh}`);
  }
} catch (e) {
  fail('publicKeyHash', e);
}
try {
  signed = await signer.sign(hex);
} catch (e) {
  fail('sign', e);
}
try {
  if (!verifySignature(hex, publicKey, signed.prefixSig)) {
    throw new Error(`signature ${signed.prefixSig} does not verify against ${publicKey}`);
  }
} catch (e) {
  fail('verify', e);
}

console.log(
  JSON.stringify({
    ok: true,
    pkh: publicKeyHash,
    public_key: publicKey,
    signature: signed.prefixSig,
    generic_signature: signed.sig,
    bytes: signed.bytes,
  }),
);
