// Interop check: Taquito's RemoteSigner against a signer-gateway (run by tests/taquito.rs).
//
// usage: node sign.mjs <gateway base url> <pkh> <hex bytes>
//
// Prints one JSON line on stdout and exits 0 on success; on any failure prints a JSON line
// with {"ok":false,...} and exits 1 (2 for a usage error). The line says which code path was
// used ("path") and how the signature was checked ("scheme").
//
// tz1/tz2/tz3 (path "RemoteSigner.sign"): RemoteSigner.sign() fetches the public key, checks
// that it hashes to <pkh> and verifies the returned signature itself (with the @taquito/utils 21
// it bundles: blake2b-256 of the bytes); we verify once more with @taquito/utils 25.
//
// tz4 (path "RemoteSigner.http+utils.verifySignature"): @taquito/remote-signer (21.0.0, the
// newest on npm) cannot sign with a tz4 key: its sign() rejects a "BLsig" answer (not a prefix
// its @taquito/utils 21 knows), its verifyPublicKey() only knows ed/sp/p2 keys, and its
// verifySignature has no BLS; forcing @taquito/utils 25 on it with npm overrides breaks the
// import (utils 25 no longer exports `prefix`, `b58cdecode`, …). Calling sign() and falling back
// would not do either: the gateway would already have signed (and moved its high watermark), so
// a retry of the same attestation is a double-sign refusal. So for tz4 we still construct the
// RemoteSigner (pkh validation), fetch the key with RemoteSigner.publicKey(), and POST the bytes
// through the RemoteSigner's own HttpBackend and URL exactly as RemoteSigner.sign() does; then
// we check the key hash and verify with @taquito/utils 25 verifySignature, which for a BLpk uses
// the proof-of-possession scheme (DST BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_) over the raw
// bytes, no hash.
import { RemoteSigner, VERSION as REMOTE_SIGNER_VERSION } from '@taquito/remote-signer';
import {
  verifySignature,
  getPkhfromPk,
  b58DecodeAndCheckPrefix,
  PrefixV2,
  VERSION as UTILS_VERSION,
} from '@taquito/utils';

function fail(stage, err, path) {
  const out = {
    ok: false,
    stage,
    path,
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

const bls = pkh.startsWith('tz4');
const path = bls ? 'RemoteSigner.http+utils.verifySignature' : 'RemoteSigner.sign';

let signer;
try {
  signer = new RemoteSigner(pkh, baseUrl);
} catch (e) {
  fail('construct', e, path);
}

let publicKey, publicKeyHash, signed;
try {
  publicKey = await signer.publicKey();
} catch (e) {
  fail('publicKey', e, path);
}
try {
  publicKeyHash = await signer.publicKeyHash();
  const derived = getPkhfromPk(publicKey);
  if (derived !== pkh || publicKeyHash !== pkh) {
    throw new Error(`public key ${publicKey} hashes to ${derived}, expected ${pkh}`);
  }
} catch (e) {
  fail('publicKeyHash', e, path);
}

// RemoteSigner.sign() for a tz4 key: the same request through the same HttpBackend, then the
// checks RemoteSigner.sign() makes (key fetched again and hashed, signature verified), done with
// @taquito/utils 25. HTTP errors are left as HttpResponseError (status and body kept).
async function signTz4(bytes) {
  const { signature } = await signer.http.createRequest(
    {
      url: signer.createURL(`/keys/${pkh}`),
      method: 'POST',
      headers: signer.options.headers,
    },
    bytes,
  );
  if (typeof signature !== 'string' || !signature.startsWith('BLsig')) {
    throw new Error(`expected a BLsig signature for ${pkh}, got ${JSON.stringify(signature)}`);
  }
  b58DecodeAndCheckPrefix(signature, [PrefixV2.BLS12_381Signature]); // 96 bytes, checksum
  const pk = await signer.publicKey();
  if (pk !== publicKey || getPkhfromPk(pk) !== pkh) {
    throw new Error(`public key ${pk} (refetched) does not hash to ${pkh}`);
  }
  if (!verifySignature(bytes, pk, signature)) {
    throw new Error(`signature ${signature} does not verify against ${pk}`);
  }
  return {
    bytes,
    // Octez has no generic ("sig") form for a 96-byte BLS signature; Taquito 25's own BLS
    // signer would put the 96 bytes under the 64-byte generic prefix, which nothing decodes.
    sig: null,
    prefixSig: signature,
  };
}

try {
  signed = bls ? await signTz4(hex) : await signer.sign(hex);
} catch (e) {
  fail('sign', e, path);
}
try {
  if (!verifySignature(hex, publicKey, signed.prefixSig)) {
    throw new Error(`signature ${signed.prefixSig} does not verify against ${publicKey}`);
  }
} catch (e) {
  fail('verify', e, path);
}

console.log(
  JSON.stringify({
    ok: true,
    path,
    scheme: bls
      ? 'BLS12-381 MinPk, DST BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_ over the bytes'
      : 'blake2b-256 of the bytes',
    taquito: { remote_signer: REMOTE_SIGNER_VERSION.version, utils: UTILS_VERSION.version },
    pkh: publicKeyHash,
    public_key: publicKey,
    signature: signed.prefixSig,
    generic_signature: signed.sig,
    bytes: signed.bytes,
  }),
);
