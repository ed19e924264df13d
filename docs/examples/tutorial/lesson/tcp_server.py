# The lesson's iterative TCP server, as the slides give it ("TCP server 1"
# and "TCP server 2"), with the slides' typos fixed so that it runs on
# Python 3: "for socket import *", socket.socket(...), the Python 2 print and
# "while True;".  The slide ends the loop with ":"; the textbook's server
# closes the connection there, and so does this one.
from socket import *
serverPort = 50007
serverHost = 'localhost'
serverSocket = socket(AF_INET, SOCK_STREAM)
serverSocket.bind((serverHost, serverPort))
serverSocket.listen(1)
print ('The server is ready to receive')
while True:
    connectionID, addr = serverSocket.accept()
    sentence = connectionID.recv(2038)
    capitalizedSentence = sentence.upper()
    connectionID.send(capitalizedSentence)
    connectionID.close()
