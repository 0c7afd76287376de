import { describe, expect, it } from 'vitest';
import { parseChallenges, repositoryScope } from '../../../src/registry/auth.js';
import { endpointsFor, endpointURL, isLoopbackHost } from '../../../src/registry/hosts.js';

describe('WWW-Authenticate parsing', () => {
  it('reads a Docker Hub style bearer challenge', () => {
    expect(
      parseChallenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"'),
    ).toEqual([
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull' },
      },
    ]);
  });

  it('reads basic, several challenges, escapes and unquoted values', () => {
    expect(parseChallenges(['Basic realm="Registry Realm"', 'Bearer realm=http://x/t, service=svc, error="invalid_token"'])).toEqual([
      { scheme: 'basic', params: { realm: 'Registry Realm' } },
      { scheme: 'bearer', params: { realm: 'http://x/t', service: 'svc', error: 'invalid_token' } },
    ]);
    expect(parseChallenges('Bearer realm="a\\"b", Basic realm="r"')).toEqual([
      { scheme: 'bearer', params: { realm: 'a"b' } },
      { scheme: 'basic', params: { realm: 'r' } },
    ]);
    expect(parseChallenges(undefined)).toEqual([]);
  });

  it('forms repository scopes', () => {
    expect(repositoryScope('library/busybox', false)).toBe('repository:library/busybox:pull');
    expect(repositoryScope('team/app', true)).toBe('repository:team/app:pull,push');
  });
});

describe('registry hosts', () => {
  it('recognizes loopback hosts', () => {
    for (const h of ['localhost', 'localhost:5000', '127.0.0.1', '127.0.0.1:5000', '127.1.2.3:80', '::1', '[::1]:5000']) {
      expect(isLoopbackHost(h), h).toBe(true);
    }
    for (const h of ['docker.io', 'registry-1.docker.io', '10.0.0.1:5000', 'localhost.example.com']) {
      expect(isLoopbackHost(h), h).toBe(false);
    }
  });

  it('sends Docker Hub to its API host over https', () => {
    const eps = endpointsFor('docker.io', {}, 'pull');
    expect(eps.map((e) => endpointURL(e, '/library/busybox/manifests/latest'))).toEqual([
      'https://registry-1.docker.io/v2/library/busybox/manifests/latest',
    ]);
  });

  it('tries https then http for loopback hosts unless configured', () => {
    expect(endpointsFor('localhost:5000', {}, 'pull').map((e) => `${e.scheme}:${e.tryNextOnConnectError}`)).toEqual([
      'https:true',
      'http:false',
    ]);
    expect(endpointsFor('localhost:5000', { 'localhost:5000': { http: false } }, 'pull').map((e) => e.scheme)).toEqual(['https']);
    expect(endpointsFor('localhost:5000', { 'localhost:5000': { http: true } }, 'pull').map((e) => e.scheme)).toEqual(['http']);
  });

  it('honours http and insecure as upstream: both give http then unverified https', () => {
    const eps = endpointsFor('reg.example:5000', { 'reg.example:5000': { http: true, insecure: true } }, 'pull');
    expect(eps.map((e) => [e.scheme, e.insecureTLS])).toEqual([
      ['http', false],
      ['https', true],
    ]);
  });

  it('puts mirrors first for pulls only, with their own settings and path prefix', () => {
    const hosts = {
      'docker.io': { mirrors: ['mirror.local:5000', 'https://m2.example/prefix/'] },
      'mirror.local:5000': { http: true },
    };
    const pull = endpointsFor('docker.io', hosts, 'pull');
    expect(pull.map((e) => [endpointURL(e, '/library/x/manifests/latest'), e.mirror])).toEqual([
      ['http://mirror.local:5000/v2/library/x/manifests/latest', true],
      ['https://m2.example/v2/prefix/library/x/manifests/latest', true],
      ['https://registry-1.docker.io/v2/library/x/manifests/latest', false],
    ]);
    expect(endpointsFor('docker.io', hosts, 'push').map((e) => e.host)).toEqual(['registry-1.docker.io']);
  });
});
