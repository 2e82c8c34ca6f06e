// A real, standards-compliant OpenID provider (node-oidc-provider) for the Gatehouse
// end-to-end tests. Gatehouse only ever talks OIDC discovery + JWKS to it; the tests get
// access tokens from it with the client_credentials grant.
//
// Usage:
//   node provider.mjs --port PORT --jwks PRIVATE_JWKS.json --clients CLIENTS.json \
//        [--issuer http://127.0.0.1:PORT] [--alg RS256|ES256] [--sign-kid KID] [--ttl SECONDS]
//        [--tls-cert CERT.pem --tls-key KEY.pem] [--bind 127.0.0.1]
// With --tls-cert/--tls-key it serves HTTPS (the appliance boot test: the gateway in the VM
// reaches it at https://10.0.2.2:PORT, the issuer it is given).
// Every option may also come from the environment: OIDC_PORT, OIDC_ISSUER, OIDC_JWKS,
// OIDC_CLIENTS, OIDC_ALG, OIDC_SIGN_KID, OIDC_TTL.
//
// PRIVATE_JWKS.json: {"keys": [<private JWK with "kid">, ...]}; the public halves are served
// at the jwks_uri. The signing key is --sign-kid if given, else the first key usable with --alg.
// CLIENTS.json: [{"client_id": "agent-alice", "client_secret": "...",
//                 "groups": ["analysts"], "email": "alice@example.test"}, ...]
//
// Access tokens for the resource indicator urn:gatehouse are JWTs (aud "gatehouse") carrying
// sub = client_id, groups, preferred_username and (if given) email. Prints "listening <issuer>"
// on stdout once the HTTP server accepts connections.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    issuer: { type: 'string' },
    jwks: { type: 'string' },
    clients: { type: 'string' },
    alg: { type: 'string' },
    'sign-kid': { type: 'string' },
    ttl: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    bind: { type: 'string' },
  },
});

const port = Number(args.port ?? process.env.OIDC_PORT ?? 0);
if (!Number.isInteger(port) || port <= 0) {
  console.error('provider.mjs: --port PORT is required');
  process.exit(2);
}
const issuer = args.issuer ?? process.env.OIDC_ISSUER ?? `http://127.0.0.1:${port}`;
const jwksPath = args.jwks ?? process.env.OIDC_JWKS;
const clientsPath = args.clients ?? process.env.OIDC_CLIENTS;
const alg = args.alg ?? process.env.OIDC_ALG ?? 'RS256';
const signKid = args['sign-kid'] ?? process.env.OIDC_SIGN_KID ?? undefined;
const ttl = Number(args.ttl ?? process.env.OIDC_TTL ?? 600);
if (!jwksPath || !clientsPath) {
  console.error('provider.mjs: --jwks FILE and --clients FILE are required');
  process.exit(2);
}

const RESOURCE = 'urn:gatehouse';
const AUDIENCE = 'gatehouse';

const jwks = JSON.parse(readFileSync(jwksPath, 'utf8'));
const clientList = JSON.parse(readFileSync(clientsPath, 'utf8'));
const clientInfo = new Map(clientList.map((c) => [c.client_id, c]));

const provider = new Provider(issuer, {
  jwks,
  clients: clientList.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: alg,
    scope: 'db',
  })),
  scopes: ['openid', 'db'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) {
          // Unknown resource indicators are rejected by the provider (invalid_target).
          throw new Provider.errors.InvalidTarget();
        }
        return {
          audience: AUDIENCE,
          scope: 'db',
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: signKid ? { alg, kid: signKid } : { alg } },
        };
      },
    },
  },
  extraTokenClaims: async (_ctx, token) => {
    const info = clientInfo.get(token.clientId);
    if (!info) return undefined;
    const claims = {
      groups: info.groups ?? [],
      preferred_username: info.preferred_username ?? info.client_id,
    };
    if (info.email) claims.email = info.email;
    return claims;
  },
  // Development-only provider: fixed cookie keys are fine (no interactive logins happen).
  cookies: { keys: ['gatehouse-test-cookie-key'] },
});

// The issuer is http:// on loopback; oidc-provider only warns about that.
provider.proxy = false;

provider.on('server_error', (_ctx, err) => {
  console.error('oidc server_error:', err);
});
provider.on('grant.error', (_ctx, err) => {
  console.error('oidc grant.error:', err?.message, err?.error_description ?? '');
});

const bind = args.bind ?? '127.0.0.1';
const onListening = () => {
  console.log(`listening ${issuer}`);
};
const server = args['tls-cert']
  ? createServer(
      { cert: readFileSync(args['tls-cert']), key: readFileSync(args['tls-key']) },
      provider.callback(),
    ).listen(port, bind, onListening)
  : provider.listen(port, bind, onListening);

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
