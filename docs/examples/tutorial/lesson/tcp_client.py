# The lesson's TCP client ("connect, send a sentence, read the reply, print
# it, close"); the slides leave it out, so this is the course textbook's.
from socket import *
serverName = 'localhost'
serverPort = 50007
clientSocket = socket(AF_INET, SOCK_STREAM)
clientSocket.connect((serverName, serverPort))
sentence = input('Input lowercase sentence:')
clientSocket.send(sentence.encode())
modifiedSentence = clientSocket.recv(1024)
print ('From Server: ', modifiedSentence.decode())
clientSocket.close()
